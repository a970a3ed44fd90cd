// machine-monitor dashboard: overview, live score timelines (uPlot), alerts with their evidence.
// Data: GET /api/state, /api/alerts, /api/machines/NAME/scores; live: EventSource /api/stream.
// Actions (POST) carry the token as "Authorization: Bearer ...".
(function () {
  "use strict";

  var STATE_LABEL = {normal: "normal", pending: "pending", firing: "firing", acknowledged: "acknowledged",
    silenced: "silenced", signal_lost: "signal lost", device_lost: "device lost",
    machine_stopped: "machine stopped", stopped: "not monitored"};
  var RANGE_SECONDS = {hour: 3600, day: 86400}, TITLE = document.title;
  var S = {range: "hour", machines: [], charts: {}, data: {}, alerts: [], open: {}, opened: false, now: Date.now() / 1000};

  // -- small helpers ---------------------------------------------------------------------
  function h(tag, attrs) {
    var el = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") el.textContent = attrs[k];
      else if (k === "on") Object.keys(attrs.on).forEach(function (e) { el.addEventListener(e, attrs.on[e]); });
      else if (attrs[k] !== null && attrs[k] !== undefined && attrs[k] !== false) el.setAttribute(k, attrs[k]);
    });
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined) continue;
      el.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return el;
  }
  function num(x) { return x === null || x === undefined ? "–" : Number(x).toPrecision(3); }
  function clock(t) { return t ? new Date(t * 1000).toLocaleTimeString([], {hour12: false}) : "–"; }
  function when(t) {
    if (!t) return "–";
    var d = new Date(t * 1000), today = new Date().toDateString() === d.toDateString();
    return (today ? "" : d.toLocaleDateString() + " ") + clock(t);
  }
  function ago(t) {
    if (!t) return "never";
    var s = Math.max(0, S.now - t);
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 172800) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " days ago";
  }
  function say(text, ok) {
    var m = document.getElementById("message");
    m.textContent = text; m.className = ok ? "ok" : ""; m.hidden = false;
    clearTimeout(say.timer); say.timer = setTimeout(function () { m.hidden = true; }, ok ? 4000 : 10000);
  }
  function getJSON(url) {
    return fetch(url, {cache: "no-store"}).then(function (r) {
      if (!r.ok) throw new Error(url + ": HTTP " + r.status);
      return r.json();
    });
  }

  // -- who and token (kept in this browser) ------------------------------------------------
  var who = document.getElementById("who"), tok = document.getElementById("token");
  (function () {
    var m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (m) {
      localStorage.setItem("mm-token", decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);  // keep it out of the address bar
    }
    who.value = localStorage.getItem("mm-who") || "";
    tok.value = localStorage.getItem("mm-token") || "";
    function note() { document.getElementById("token-state").textContent = tok.value ? "saved" : "actions need it"; }
    note();
    who.addEventListener("change", function () { localStorage.setItem("mm-who", who.value.trim()); });
    tok.addEventListener("change", function () { localStorage.setItem("mm-token", tok.value.trim()); note(); });
  })();

  // An action: says what went wrong itself and resolves to null then (callers act on success only).
  function act(url, body) {
    if (!who.value.trim()) { who.focus(); say("Type your name first (top right): it is recorded with the action."); return Promise.resolve(null); }
    if (!tok.value.trim()) { tok.focus(); say("Paste the dashboard token (printed when the service started) top right."); return Promise.resolve(null); }
    body.who = who.value.trim();
    return fetch(url, {method: "POST", headers: {"Content-Type": "application/json",
      "Authorization": "Bearer " + tok.value.trim()}, body: JSON.stringify(body)})
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (d) {
          if (r.status === 401) throw new Error("The token is missing or wrong: " + (d.error || "refused"));
          if (!r.ok) throw new Error(d.error || ("HTTP " + r.status));
          return d;
        });
      })
      .catch(function (e) { say(e.message); return null; });
  }

  // -- overview ------------------------------------------------------------------------------
  function renderMachines(st) {
    var box = document.getElementById("machines");
    if (!box.querySelector(".card")) box.textContent = "";
    st.machines.forEach(function (m) {
      var level = m.level || m.threshold, ratio = (m.score !== null && level) ? m.score / level : 0;
      var last = m.last_alert, card = document.getElementById("machine-" + m.name);
      if (!card) {  // built once: the silence form keeps what is being typed while scores update
        card = h("div", {id: "machine-" + m.name}, h("h3"), h("div", {"class": "status"}), silenceForm(m.name));
        box.appendChild(card);
      }
      card.className = "card st-" + m.state;
      card.dataset.state = m.state;
      card.replaceChild(h("h3", null, h("span", {text: m.name}),
        h("span", {"class": "badge", text: STATE_LABEL[m.state] || m.state})), card.firstChild);
      var status = card.querySelector(".status");
      status.textContent = "";
      [h("div", {"class": "row"}, h("span", {"class": "score", text: "score " + num(m.score)}),
          h("span", {text: "alert level " + num(level)})),
        h("div", {"class": "gauge", title: "score against the alert level (middle line)"},
          h("i", {"class": ratio > 1 ? "over" : "", style: "width:" + Math.min(100, 50 * ratio).toFixed(1) + "%"}), h("b")),
        h("div", {"class": "row muted"},
          h("span", {text: last ? "last alert " + ago(last.epoch) + " (#" + last.episode + ", peak " + num(last.peak_score) + ")" : "no alert yet"})),
        // Scores arrive every half second: a machine silent for longer than 10 s says since when.
        !m.updated ? h("div", {"class": "row stale", text: "no score yet"}) :
          S.now - m.updated > 10 ? h("div", {"class": "row stale", text: "no new score since " + ago(m.updated)}) : null,
        m.error ? h("div", {"class": "row stale", text: m.error}) : null,
        m.health && m.health.length ? h("div", {"class": "row", text: "health: " + m.health.join(", ").replace(/_/g, " ")}) : null,
        m.acknowledged ? h("div", {"class": "row muted", text: "acknowledged by " + m.acknowledged.who + " at " + clock(m.acknowledged.epoch)}) : null,
        m.silenced_until ? h("div", {"class": "row muted", text: "silenced until " + when(m.silenced_until) + ": alerts are recorded, not notified"}) : null
      ].forEach(function (el) { if (el) status.appendChild(el); });
    });
    var sb = document.getElementById("silences");
    sb.textContent = "";
    (st.silences || []).forEach(function (s) {
      sb.appendChild(h("div", {"class": "silence", id: "silence-" + s.id},
        h("span", {text: "Silenced: " + (s.machine || "every machine") + " until " + when(s.until) + " by " + s.who +
          (s.reason ? " (" + s.reason + ")" : "")}),
        h("button", {type: "button", on: {click: function () {
          act("/api/silences/" + s.id + "/end", {}).then(function (d) { if (d) { say("Silence ended.", true); refresh(); } });
        }}}, "End now")));
    });
  }

  function silenceForm(name) {
    var sel = h("select", {"aria-label": "silence duration"});
    [[30, "30 min"], [60, "1 h"], [240, "4 h"], [480, "8 h"], [1440, "24 h"]].forEach(function (o) {
      sel.appendChild(h("option", {value: o[0]}, o[1]));
    });
    var reason = h("input", {size: 12, placeholder: "reason (optional)"});
    return h("div", {"class": "actions"}, h("button", {type: "button", id: "silence-btn-" + name, on: {click: function () {
      act("/api/silences", {machine: name, minutes: Number(sel.value), reason: reason.value}).then(function (d) {
        if (d) { say(name + " silenced for " + sel.options[sel.selectedIndex].text + ".", true); refresh(); }
      });
    }}}, "Silence"), sel, reason);
  }

  // -- timelines -------------------------------------------------------------------------------
  function spans(name) {
    return S.alerts.filter(function (a) { return a.machine === name; }).map(function (a) {
      return [a.epoch, a.ended ? a.ended.epoch : S.now];
    });
  }

  // Scores of a fault can be 100x the alert level: then a log scale keeps normal sound, the
  // alert level and the fault readable on one chart (the same rule as the evaluation plots).
  function wantsLog(name) {
    var d = S.data[name] || {score: []}, m = S.machines.find(function (x) { return x.name === name; }) || {};
    var level = m.level || m.threshold || 0, lo = Infinity, hi = level;
    for (var i = 0; i < d.score.length; i++) {
      var v = d.score[i];
      if (v === null) continue;
      if (v <= 0) return false;
      lo = Math.min(lo, v); hi = Math.max(hi, v);
    }
    return level > 0 && lo < Infinity && hi / Math.min(lo, level) > 100;
  }

  function chartData(name, log) {
    var d = S.data[name] || {t: [], score: []}, m = S.machines.find(function (x) { return x.name === name; }) || {};
    var level = m.level || m.threshold || 0, sp = spans(name);
    var top = Math.max(level, d.score.reduce(function (a, b) { return b === null ? a : Math.max(a, b); }, 0)) * 1.08;
    var lv = d.t.map(function () { return level; });
    var fir = d.t.map(function (t) { return sp.some(function (s) { return t >= s[0] && t <= s[1]; }) ? top : null; });
    var sc = log ? d.score.map(function (v) { return v !== null && v > 0 ? v : null; }) : d.score;
    return [d.t, sc, lv, fir];
  }

  function makeChart(name, log) {
    var holder = document.getElementById("chart-" + name);
    if (!holder) {
      holder = h("div", {"class": "chart", id: "chart-" + name}, h("h3", null, h("span", {text: name}),
        h("span", {"class": "muted scale"})));
      document.getElementById("charts").appendChild(holder);
    }
    if (S.charts[name]) S.charts[name].destroy();
    holder.querySelector(".scale").textContent = log ? "log scale" : "";
    var opts = {
      width: Math.max(320, holder.clientWidth - 16), height: 170, legend: {show: false}, cursor: {drag: {x: false, y: false}},
      scales: {x: {time: true}, y: log ? {distr: 3, log: 10} :
        {range: function (u, lo, hi) { return [Math.min(0, lo), Math.max(hi, 1e-9) * 1.05]; }}},
      axes: [{}, {label: "score", size: 60}],
      series: [{},
        {label: "score", stroke: "#1f3b5a", width: 1.2, spanGaps: false, points: {show: false}},
        {label: "alert level", stroke: "#c0392b", dash: [6, 4], width: 1.5, points: {show: false}},
        {label: "alert firing", stroke: "rgba(0,0,0,0)", fill: "rgba(230,126,34,0.3)", points: {show: false},
          paths: uPlot.paths.stepped({align: 1})}]
    };
    S.charts[name] = new uPlot(opts, chartData(name, log), holder);
    S.charts[name].log = log;
  }

  function drawCharts() {
    S.machines.forEach(function (m) {
      var log = wantsLog(m.name);
      if (!S.charts[m.name] || S.charts[m.name].log !== log) makeChart(m.name, log);
      var u = S.charts[m.name], d = S.data[m.name] || {t: []};
      u.setData(chartData(m.name, log), false);
      // The whole range once there is that much history; until then what there is (at least 2 min).
      var now = S.now, first = d.t.length ? d.t[0] : now;
      u.setScale("x", {min: Math.max(now - RANGE_SECONDS[S.range], Math.min(first, now - 120)), max: now});
    });
  }

  function loadScores() {
    return Promise.all(S.machines.map(function (m) {
      return getJSON("/api/machines/" + encodeURIComponent(m.name) + "/scores?range=" + S.range).then(function (d) {
        S.data[m.name] = d;
      });
    })).then(drawCharts);
  }

  function addPoints(name, pts) {
    if (S.range !== "hour" || !pts || !pts.length) return;
    var d = S.data[name] || (S.data[name] = {t: [], score: []});
    pts.forEach(function (p) {
      if (d.t.length && p[0] <= d.t[d.t.length - 1]) return;
      d.t.push(p[0]); d.score.push(p[1]);
    });
    var cut = S.now - RANGE_SECONDS.hour, i = 0;
    while (i < d.t.length && d.t[i] < cut) i++;
    if (i) { d.t.splice(0, i); d.score.splice(0, i); }
  }

  document.querySelectorAll(".range button").forEach(function (b) {
    b.addEventListener("click", function () {
      S.range = b.dataset.range;
      document.querySelectorAll(".range button").forEach(function (x) { x.classList.toggle("on", x === b); });
      loadScores();
    });
  });
  window.addEventListener("resize", function () {
    Object.keys(S.charts).forEach(function (n) {
      var el = document.getElementById("chart-" + n);
      S.charts[n].setSize({width: Math.max(320, el.clientWidth - 16), height: 170});
    });
  });

  // -- alerts ------------------------------------------------------------------------------------
  function renderAlerts() {
    var box = document.getElementById("alerts");
    if (!S.alerts.length) { box.textContent = ""; box.appendChild(h("p", {"class": "muted", text: "No alert so far."})); return; }
    if (!S.opened) { S.open[S.alerts[0].id] = true; S.opened = true; }  // the newest one shows its evidence
    var keep = {};
    S.alerts.forEach(function (a) { keep["alert-" + a.id] = true; });
    Array.prototype.slice.call(box.children).forEach(function (c) { if (!keep[c.id]) box.removeChild(c); });
    var prev = null;
    S.alerts.forEach(function (a) {
      var el = document.getElementById("alert-" + a.id);
      var sig = JSON.stringify([a.acknowledged, a.ended, !!S.open[a.id], Math.floor(S.now / 15)]);
      if (!el || el.dataset.sig !== sig) {
        var fresh = alertElement(a);
        fresh.dataset.sig = sig;
        if (el) {
          var body = el.querySelector(".body");  // keep a playing recording and a loaded picture
          if (body && S.open[a.id]) fresh.replaceChild(body, fresh.querySelector(".body"));
          box.replaceChild(fresh, el);
        }
        el = fresh;
      }
      if (prev ? prev.nextSibling !== el : box.firstChild !== el) box.insertBefore(el, prev ? prev.nextSibling : box.firstChild);
      prev = el;
    });
  }

  function alertElement(a) {
    var status = a.ended ? "ended " + clock(a.ended.epoch) + (a.ended.reason ? " (" + a.ended.reason + ")" : "")
      : "FIRING for " + ago(a.epoch).replace(" ago", "");
    var cls = "alert" + (a.ended ? " ended" : "") + (a.acknowledged ? " acked" : "");
    var head = h("div", {"class": "head"},
      h("strong", {text: a.machine + ": alert #" + a.episode}),
      h("span", {text: when(a.epoch) + " (" + ago(a.epoch) + ")"}),
      h("span", {text: "peak " + num(a.peak_score) + " > level " + num(a.threshold) + (a.windows ? ", " + a.windows + " windows" : "")}),
      h("span", {"class": a.ended ? "muted" : "badge st-firing", text: status}),
      a.silenced ? h("span", {"class": "muted", text: "(raised during a silence)"}) : null,
      a.acknowledged ? h("span", {"class": "muted ack", text: "acknowledged by " + a.acknowledged.who + " at " + when(a.acknowledged.epoch)})
        : h("button", {type: "button", "class": "primary", id: "ack-" + a.id, on: {click: function () {
          act("/api/alerts/" + a.id + "/ack", {}).then(function (d) {
            if (d) { say("Alert #" + a.episode + " on " + a.machine + " acknowledged.", true); refresh(); }
          });
        }}}, "Acknowledge"),
      h("button", {type: "button", id: "toggle-" + a.id, on: {click: function () { S.open[a.id] = !S.open[a.id]; renderAlerts(); }}},
        S.open[a.id] ? "Hide evidence" : "Show evidence"));
    var body = h("div", {"class": "body"});
    if (S.open[a.id]) {
      if (a.audio_url) {
        body.appendChild(h("audio", {controls: "", preload: "auto", id: "audio-" + a.id, src: a.audio_url}));
        var ul = h("ul", {id: "summary-" + a.id}, h("li", {"class": "muted", text: "reading the evidence…"}));
        body.appendChild(ul);
        body.appendChild(h("img", {src: a.evidence_url, id: "evidence-" + a.id, loading: "lazy",
          alt: "spectrogram, difference from normal and window scores of the evidence recording"}));
        getJSON(a.summary_url).then(function (d) {
          ul.textContent = "";
          d.summary.forEach(function (s) { ul.appendChild(h("li", {text: s})); });
        }).catch(function () { ul.textContent = ""; ul.appendChild(h("li", {"class": "muted", text: "no summary"})); });
      } else {
        body.appendChild(h("p", {"class": "muted", text: a.evidence_note || "no evidence"}));
      }
    }
    return h("div", {"class": cls, id: "alert-" + a.id, "data-machine": a.machine}, head, body);
  }

  // -- loading and live updates -------------------------------------------------------------------
  function applyState(st) {
    S.now = st.now;
    S.machines = st.machines;
    renderMachines(st);
    var count = {};
    st.machines.forEach(function (m) { count[m.state] = (count[m.state] || 0) + 1; });
    var words = Object.keys(count).filter(function (k) { return k !== "normal"; }).map(function (k) {
      return count[k] + " " + (STATE_LABEL[k] || k);
    });
    var text = st.machines.length + " machine" + (st.machines.length === 1 ? "" : "s") + ": " +
      (words.length ? words.join(", ") : "all normal");
    document.getElementById("summary").textContent = text;
    document.title = (count.firing ? "(" + count.firing + " firing) " : "") + TITLE;
  }

  function loadAlerts() {
    return getJSON("/api/alerts?limit=30").then(function (a) {
      if (S.opened) {  // an alert that arrives while the page is open shows its evidence at once
        var known = {};
        S.alerts.forEach(function (x) { known[x.id] = true; });
        a.forEach(function (x) { if (!known[x.id] && !x.ended) S.open[x.id] = true; });
      }
      S.alerts = a; renderAlerts(); drawCharts();
    });
  }

  function refresh() {
    return getJSON("/api/state").then(applyState).then(loadAlerts);
  }

  var live = document.getElementById("live"), pendingAlerts = null;
  function connect(after) {
    var es = new EventSource("/api/stream" + (after ? "?after=" + after : ""));
    es.onopen = function () { live.textContent = "live"; live.className = "live"; };
    es.onerror = function () { live.textContent = "reconnecting…"; live.className = "live off"; };
    es.addEventListener("state", function (e) {
      var st = JSON.parse(e.data);
      applyState(st);
      st.machines.forEach(function (m) { addPoints(m.name, m.points); });
      if (S.range === "hour") drawCharts();
    });
    es.addEventListener("events", function (e) {
      var evs = JSON.parse(e.data), fresh = evs.filter(function (x) { return x.event === "alert"; });
      if (fresh.length) say("New alert on " + fresh.map(function (x) { return x.machine; }).join(", ") + ".");
      clearTimeout(pendingAlerts);
      pendingAlerts = setTimeout(loadAlerts, 200);
    });
  }

  getJSON("/api/state").then(function (st) {
    applyState(st);
    return Promise.all([loadScores(), loadAlerts()]).then(function () { connect(st.last_event_id); });
  }).catch(function (e) { say("Cannot reach the monitor: " + e.message); });
  setInterval(function () { if (S.range === "day") loadScores(); }, 30000);
})();
